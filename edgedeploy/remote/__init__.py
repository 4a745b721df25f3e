"""The board in the loop: drive a Jetson or an RB5 Gen2 (or a fleet of them) over SSH from the host.

Host side (no PyTorch needed except where the fidelity gate runs):

* ``transport``  the system OpenSSH client (``ssh``), BatchMode, timeouts, ``-F FILE``; every remote command built
  from an argument list with ``shlex.quote``; ssh's failures turned into one line each;
* ``inputs``     the benchmark pre-processed on the host (the model card's input size, the shared
  ``load_image``) into tensor parts, cached, that the board scores without decoding anything;
* ``session``    one board: checks (version, runtime, disk, work folder), copy, ``engine build``, score, fetch,
  clean;
* ``fingerprint`` the board's state (model, L4T/JetPack or Qualcomm image, TensorRT/QNN/CUDA, power mode, clocks)
  for the score header and the report;
* ``fleet``      several boards in parallel: side by side, board-to-board agreement, ``--shard``;
* ``inventory``  ``--remote a,b,c``, an inventory file, labgrid places;
* ``fidelity``, ``score``  what ``edgedeploy fidelity --remote`` / ``score --remote`` / ``engine build --remote`` run.

Board side: ``agent`` (``edgedeploy remote-agent``, hidden), torch-free; it writes only under the run's work folder.
"""

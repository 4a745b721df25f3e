"""TensorRT target (Jetson): trtexec script, in-process engine build, engine metadata, engine runner."""

"""The Open Inference Protocol (KServe V2): binary framing, tensor codec, the views."""

"""INT8 quantization with NNCF and the distillation-aware QAT that follows it."""

"""On-disk formats: safetensors I/O that never unpickles, and the Hugging Face PEFT adapter layout."""

"""The model: GGUF and HF readers → canonical weights, the tokenizer with its chat template, the penzai model in
three forms (unrolled, LayerStack, true scan), and capture (a forward that stops at a layer). May import errors and
validation only: it knows nothing of prompts, SAEs or scores."""

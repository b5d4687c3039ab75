"""Built-in trainers: tokenizer, pretraining and finetuning of small phi-class models."""

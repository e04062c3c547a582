"""Prompts: multiple-choice questions as token ids in the letter, text and cloze formats (and letter variants).

May import harness.data and harness.model.tokenizer (the chat template it renders); nothing above."""

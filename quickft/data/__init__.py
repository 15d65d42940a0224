"""Data: each file type and record shape read into one example shape (readers.py), the keys of prompt/answer
records (columns.py), preference pairs and labelled answers (pairs.py), GRPO's prompts (tasks.py), the split into
training examples, test cases and eval examples (split.py), examples into training rows (encode.py), and chat
templates rendered as inference renders them (chat_template.py).

Pure Python and tokenizers: nothing here imports torch, TRL or the rewards.
"""

from quickft.data.readers import Example, Read, clean_examples, guess_format, is_hub_id, read_data, read_examples

__all__ = ["Example", "Read", "clean_examples", "guess_format", "is_hub_id", "read_data", "read_examples"]

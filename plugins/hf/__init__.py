"""Hugging Face Transformers models (``model=hf``) and tokenized text data (``data=text``).

Needs the optional extra: ``pip install slimkit[hf]`` (transformers). Nothing is ever downloaded:
models and tokenizers load from local directories with ``local_files_only=True``.
"""

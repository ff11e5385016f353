"""The Hugging Face Hub: hf:// references, model cards, publishing, and the save/from_pretrained mixin."""

"""Model card templates (Jinja, rendered with huggingface_hub's ``ModelCard``); installed as ``mae_hf.model_cards``."""

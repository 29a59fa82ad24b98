"""Training the cascade's models on Ray Train: canonical COCO in, model bundles out."""

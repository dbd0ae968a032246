"""The train stage: Ray Train fits the classifier and writes a model bundle."""

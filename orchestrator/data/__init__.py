"""The dataset cache: prepared, subset and fingerprinted image-classification datasets."""

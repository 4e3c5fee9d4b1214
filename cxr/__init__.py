"""cxr: chest X-ray classifiers on imbalanced archives."""

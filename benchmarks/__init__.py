"""Speed benchmarks: jaxlin against numpy, scikit-learn and faiss on the same data."""

"""Computing features (retrieval embeddings): a test protocol's, flip-averaged or not
(:mod:`~tskd.features.protocol`), and any image files' with a trained model
(:mod:`~tskd.features.images`)."""

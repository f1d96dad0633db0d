"""BERT distillation on the Stanford Sentiment Treebank and word-level attribution scores (ICML 2023 §5.4).

Modules: sst (PTB tree reader), synthetic_sst (generator), tokenizer (local WordPiece), models (BERT classifiers
and checkpoints), train (scratch / KD training), attribution (LayerIntegratedGradients word attributions),
scores (AUROC / AUPRC protocol), pipeline (the end-to-end experiment behind scripts/distill_nlp.py).
"""

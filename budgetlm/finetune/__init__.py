"""Downstream evaluation: fine-tune pre-trained runs on suites of labelled tasks.

See docs/finetune.md.
"""

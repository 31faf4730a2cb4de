"""Evaluation beyond the judge: multiple choice by log-likelihood (lm-evaluation-harness
conventions), reward-model and implicit-reward accuracy, and an lm_eval model adapter."""

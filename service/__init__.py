"""qasynth: question/answer pairs about R for statistics, for fine-tuning code LLMs."""

from service.app import create_app

__all__ = ["create_app"]

"""Language-model providers behind one small interface (`Provider.complete`)."""

from service.providers.base import Completion, CompletionRequest, Message, Provider

__all__ = ["Completion", "CompletionRequest", "Message", "Provider"]

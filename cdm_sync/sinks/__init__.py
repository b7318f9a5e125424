"""Adapters that carry the model's change records out of the writer: the in-process event bus
here, and the sinks (oslo notifier, webhooks, ...) that subscribe to it, so no consumer ever
runs on, or slows down, the thread that applies events."""

from cdm_sync.sinks.eventbus import EventBus, Filter, SubscriptionStats

__all__ = ["EventBus", "Filter", "SubscriptionStats"]

"""The one stream runtime every Loopline service that consumes, keeps state and produces runs on.

See `shared.stream.app` for the contract: handlers are plain functions from a batch of records
(and the stream's tables) to the records to send; the runtime sends, stores, acks and commits.
"""
from shared.stream.app import Handler, Output, StreamApp
from shared.stream.delivery import Batch, OutputStalled
from shared.stream.settings import StreamSettings
from shared.stream.tables import BatchTable, TableView

__all__ = ["Batch", "BatchTable", "Handler", "Output", "OutputStalled", "StreamApp", "StreamSettings", "TableView"]

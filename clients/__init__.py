"""The FerryMQ Python client: RocketMQ 4.x remoting on anyio (asyncio or trio), blocking facades.

    async with Producer("127.0.0.1:9876", group="pg") as p:
        await p.send(Message("Orders", b"...", tags="paid", keys="order-7"))

``Producer``, ``TransactionProducer``, ``PushConsumer``, ``PullConsumer``,
``SimpleConsumer`` and ``Admin`` are async;
``ferrymq.clients.blocking`` has the same objects for plain scripts. See
docs/client.md.
"""

from .admin import Admin, QueueLag, QueueStats
from .consumer import PullConsumer, PushConsumer, allocate_average
from .instance import NoRouteError
from .message import ConsumeResult, Message, MessageExt, MessageQueue, SendResult
from .producer import Producer, TooManyInFlightError
from .remoting import BrokerError, ClientError, RemotingConnectError, RemotingTimeoutError
from .simple import SimpleConsumer
from .transaction import LocalTransactionState, TransactionProducer, TransactionSendResult

__all__ = [
    "Admin",
    "BrokerError",
    "ClientError",
    "ConsumeResult",
    "LocalTransactionState",
    "Message",
    "MessageExt",
    "MessageQueue",
    "NoRouteError",
    "Producer",
    "PullConsumer",
    "PushConsumer",
    "QueueLag",
    "QueueStats",
    "RemotingConnectError",
    "RemotingTimeoutError",
    "SendResult",
    "SimpleConsumer",
    "TooManyInFlightError",
    "TransactionProducer",
    "TransactionSendResult",
    "allocate_average",
]

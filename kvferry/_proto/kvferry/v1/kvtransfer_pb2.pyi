from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT8_E4M3: _ClassVar[DType]

class KVCompression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KV_COMPRESSION_NONE: _ClassVar[KVCompression]
    KV_COMPRESSION_FP8_E4M3: _ClassVar[KVCompression]

class PushStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_STATUS_UNSPECIFIED: _ClassVar[PushStatus]
    PUSH_STATUS_OK: _ClassVar[PushStatus]
    PUSH_STATUS_CORRUPT: _ClassVar[PushStatus]
    PUSH_STATUS_UNKNOWN_REQUEST: _ClassVar[PushStatus]
    PUSH_STATUS_REJECTED: _ClassVar[PushStatus]
    PUSH_STATUS_INCOMPLETE: _ClassVar[PushStatus]

class TransferDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_DIRECTION_UNSPECIFIED: _ClassVar[TransferDirection]
    TRANSFER_DIRECTION_SEND: _ClassVar[TransferDirection]
    TRANSFER_DIRECTION_RECEIVE: _ClassVar[TransferDirection]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT8_E4M3: DType
KV_COMPRESSION_NONE: KVCompression
KV_COMPRESSION_FP8_E4M3: KVCompression
PUSH_STATUS_UNSPECIFIED: PushStatus
PUSH_STATUS_OK: PushStatus
PUSH_STATUS_CORRUPT: PushStatus
PUSH_STATUS_UNKNOWN_REQUEST: PushStatus
PUSH_STATUS_REJECTED: PushStatus
PUSH_STATUS_INCOMPLETE: PushStatus
TRANSFER_DIRECTION_UNSPECIFIED: TransferDirection
TRANSFER_DIRECTION_SEND: TransferDirection
TRANSFER_DIRECTION_RECEIVE: TransferDirection

class KVLayout(_message.Message):
    __slots__ = ("block_size", "num_layers", "num_kv_heads", "head_dim", "dtype", "compression")
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: DType
    compression: KVCompression
    def __init__(self, block_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., compression: _Optional[_Union[KVCompression, str]] = ...) -> None: ...

class KVChunk(_message.Message):
    __slots__ = ("request_id", "seq", "layer_start", "layer_end", "block_positions", "dtype", "shape", "payload", "crc32c", "end", "compression", "scales")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LAYER_START_FIELD_NUMBER: _ClassVar[int]
    LAYER_END_FIELD_NUMBER: _ClassVar[int]
    BLOCK_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    layer_start: int
    layer_end: int
    block_positions: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    payload: bytes
    crc32c: int
    end: KVPushEnd
    compression: KVCompression
    scales: bytes
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., layer_start: _Optional[int] = ..., layer_end: _Optional[int] = ..., block_positions: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., payload: _Optional[bytes] = ..., crc32c: _Optional[int] = ..., end: _Optional[_Union[KVPushEnd, _Mapping]] = ..., compression: _Optional[_Union[KVCompression, str]] = ..., scales: _Optional[bytes] = ...) -> None: ...

class KVPushEnd(_message.Message):
    __slots__ = ("total_chunks", "first_token_id")
    TOTAL_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    total_chunks: int
    first_token_id: int
    def __init__(self, total_chunks: _Optional[int] = ..., first_token_id: _Optional[int] = ...) -> None: ...

class PushKVResponse(_message.Message):
    __slots__ = ("status", "accepted_chunks", "accepted_bytes", "rejected_seqs", "completed", "detail")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SEQS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    status: PushStatus
    accepted_chunks: int
    accepted_bytes: int
    rejected_seqs: _containers.RepeatedScalarFieldContainer[int]
    completed: bool
    detail: str
    def __init__(self, status: _Optional[_Union[PushStatus, str]] = ..., accepted_chunks: _Optional[int] = ..., accepted_bytes: _Optional[int] = ..., rejected_seqs: _Optional[_Iterable[int]] = ..., completed: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class TransferRecord(_message.Message):
    __slots__ = ("request_id", "direction", "peer", "bytes", "chunks", "resent_chunks", "seconds", "status", "wire_seconds")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RESENT_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WIRE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    direction: TransferDirection
    peer: str
    bytes: int
    chunks: int
    resent_chunks: int
    seconds: float
    status: PushStatus
    wire_seconds: float
    def __init__(self, request_id: _Optional[str] = ..., direction: _Optional[_Union[TransferDirection, str]] = ..., peer: _Optional[str] = ..., bytes: _Optional[int] = ..., chunks: _Optional[int] = ..., resent_chunks: _Optional[int] = ..., seconds: _Optional[float] = ..., status: _Optional[_Union[PushStatus, str]] = ..., wire_seconds: _Optional[float] = ...) -> None: ...

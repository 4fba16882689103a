from kvferry._proto.kvferry.v1 import generation_pb2 as _generation_pb2
from kvferry._proto.kvferry.v1 import kvtransfer_pb2 as _kvtransfer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdmitRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "output_token_ids", "sampling", "kv_wait_timeout_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    KV_WAIT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    output_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _generation_pb2.SamplingOptions
    kv_wait_timeout_ms: int
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., output_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingOptions, _Mapping]] = ..., kv_wait_timeout_ms: _Optional[int] = ...) -> None: ...

class AdmitResponse(_message.Message):
    __slots__ = ("needed_block_positions", "num_cached_tokens", "kv_endpoint", "kv_layout")
    NEEDED_BLOCK_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    KV_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    needed_block_positions: _containers.RepeatedScalarFieldContainer[int]
    num_cached_tokens: int
    kv_endpoint: str
    kv_layout: _kvtransfer_pb2.KVLayout
    def __init__(self, needed_block_positions: _Optional[_Iterable[int]] = ..., num_cached_tokens: _Optional[int] = ..., kv_endpoint: _Optional[str] = ..., kv_layout: _Optional[_Union[_kvtransfer_pb2.KVLayout, _Mapping]] = ...) -> None: ...

class KVDestination(_message.Message):
    __slots__ = ("kv_endpoint", "needed_block_positions", "kv_layout")
    KV_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    NEEDED_BLOCK_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    KV_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    kv_endpoint: str
    needed_block_positions: _containers.RepeatedScalarFieldContainer[int]
    kv_layout: _kvtransfer_pb2.KVLayout
    def __init__(self, kv_endpoint: _Optional[str] = ..., needed_block_positions: _Optional[_Iterable[int]] = ..., kv_layout: _Optional[_Union[_kvtransfer_pb2.KVLayout, _Mapping]] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "destination", "num_output_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _generation_pb2.SamplingOptions
    destination: KVDestination
    num_output_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingOptions, _Mapping]] = ..., destination: _Optional[_Union[KVDestination, _Mapping]] = ..., num_output_tokens: _Optional[int] = ...) -> None: ...

class PrefillResponse(_message.Message):
    __slots__ = ("first_token_id", "first_logprob", "num_prompt_tokens", "num_computed_tokens", "num_cached_tokens", "kv_bytes_sent", "kv_chunks_sent", "kv_transfer_s", "prefill_s")
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_COMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    KV_CHUNKS_SENT_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSFER_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_S_FIELD_NUMBER: _ClassVar[int]
    first_token_id: int
    first_logprob: _generation_pb2.TokenLogprob
    num_prompt_tokens: int
    num_computed_tokens: int
    num_cached_tokens: int
    kv_bytes_sent: int
    kv_chunks_sent: int
    kv_transfer_s: float
    prefill_s: float
    def __init__(self, first_token_id: _Optional[int] = ..., first_logprob: _Optional[_Union[_generation_pb2.TokenLogprob, _Mapping]] = ..., num_prompt_tokens: _Optional[int] = ..., num_computed_tokens: _Optional[int] = ..., num_cached_tokens: _Optional[int] = ..., kv_bytes_sent: _Optional[int] = ..., kv_chunks_sent: _Optional[int] = ..., kv_transfer_s: _Optional[float] = ..., prefill_s: _Optional[float] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request_id", "compute_prompt")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    compute_prompt: bool
    def __init__(self, request_id: _Optional[str] = ..., compute_prompt: _Optional[bool] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class WorkerStatsRequest(_message.Message):
    __slots__ = ("since_event_seq", "include_snapshot")
    SINCE_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    since_event_seq: int
    include_snapshot: bool
    def __init__(self, since_event_seq: _Optional[int] = ..., include_snapshot: _Optional[bool] = ...) -> None: ...

class BlockStored(_message.Message):
    __slots__ = ("block_hashes",)
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class BlockRemoved(_message.Message):
    __slots__ = ("block_hashes",)
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class AllBlocksCleared(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KVCacheEvent(_message.Message):
    __slots__ = ("seq", "stored", "removed", "cleared")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stored: BlockStored
    removed: BlockRemoved
    cleared: AllBlocksCleared
    def __init__(self, seq: _Optional[int] = ..., stored: _Optional[_Union[BlockStored, _Mapping]] = ..., removed: _Optional[_Union[BlockRemoved, _Mapping]] = ..., cleared: _Optional[_Union[AllBlocksCleared, _Mapping]] = ...) -> None: ...

class WorkerStats(_message.Message):
    __slots__ = ("worker_id", "load", "events", "last_event_seq", "events_truncated", "recent_transfers", "cached_block_hashes", "has_snapshot", "incarnation")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENTS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RECENT_TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    CACHED_BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    HAS_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    load: _generation_pb2.WorkerLoad
    events: _containers.RepeatedCompositeFieldContainer[KVCacheEvent]
    last_event_seq: int
    events_truncated: bool
    recent_transfers: _containers.RepeatedCompositeFieldContainer[_kvtransfer_pb2.TransferRecord]
    cached_block_hashes: _containers.RepeatedScalarFieldContainer[int]
    has_snapshot: bool
    incarnation: int
    def __init__(self, worker_id: _Optional[str] = ..., load: _Optional[_Union[_generation_pb2.WorkerLoad, _Mapping]] = ..., events: _Optional[_Iterable[_Union[KVCacheEvent, _Mapping]]] = ..., last_event_seq: _Optional[int] = ..., events_truncated: _Optional[bool] = ..., recent_transfers: _Optional[_Iterable[_Union[_kvtransfer_pb2.TransferRecord, _Mapping]]] = ..., cached_block_hashes: _Optional[_Iterable[int]] = ..., has_snapshot: _Optional[bool] = ..., incarnation: _Optional[int] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("in_flight_requests",)
    IN_FLIGHT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    in_flight_requests: int
    def __init__(self, in_flight_requests: _Optional[int] = ...) -> None: ...

class WorkerCapacity(_message.Message):
    __slots__ = ("total_kv_blocks", "max_num_seqs", "max_model_len", "kv_layout")
    TOTAL_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    KV_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    total_kv_blocks: int
    max_num_seqs: int
    max_model_len: int
    kv_layout: _kvtransfer_pb2.KVLayout
    def __init__(self, total_kv_blocks: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., max_model_len: _Optional[int] = ..., kv_layout: _Optional[_Union[_kvtransfer_pb2.KVLayout, _Mapping]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("worker_id", "role", "address", "kv_endpoint", "model", "labels", "capacity", "block_hash_scheme", "load", "topology_source", "topology_detail", "incarnation")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KV_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASH_SCHEME_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_DETAIL_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    role: _generation_pb2.WorkerRole
    address: str
    kv_endpoint: str
    model: str
    labels: _containers.ScalarMap[str, str]
    capacity: WorkerCapacity
    block_hash_scheme: int
    load: _generation_pb2.WorkerLoad
    topology_source: str
    topology_detail: str
    incarnation: int
    def __init__(self, worker_id: _Optional[str] = ..., role: _Optional[_Union[_generation_pb2.WorkerRole, str]] = ..., address: _Optional[str] = ..., kv_endpoint: _Optional[str] = ..., model: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Union[WorkerCapacity, _Mapping]] = ..., block_hash_scheme: _Optional[int] = ..., load: _Optional[_Union[_generation_pb2.WorkerLoad, _Mapping]] = ..., topology_source: _Optional[str] = ..., topology_detail: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("heartbeat_interval_ms",)
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "load", "draining")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    load: _generation_pb2.WorkerLoad
    draining: bool
    def __init__(self, worker_id: _Optional[str] = ..., load: _Optional[_Union[_generation_pb2.WorkerLoad, _Mapping]] = ..., draining: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("must_register",)
    MUST_REGISTER_FIELD_NUMBER: _ClassVar[int]
    must_register: bool
    def __init__(self, must_register: _Optional[bool] = ...) -> None: ...

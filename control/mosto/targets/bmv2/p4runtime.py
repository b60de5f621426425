"""A small P4Runtime client: one primary session (arbitration), writes, reads,
pipeline push, and the stream's digests and idle-timeout notifications.

The switch's errors are turned into P4RuntimeError with the server's own
message, one line per failed update.

Why not p4runtime-shell for the agent: the shell keeps one module-level
client for an interactive session; the agent needs an object it owns, the
stream's digests and idle notifications delivered to its event loop, and
batched writes. The shell is what `mosto bmv2 shell` opens for people, and the
BMv2 tests check that it reads back exactly what this client wrote.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
from google.protobuf import text_format
from google.rpc import code_pb2, status_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

ARBITRATION_TIMEOUT_S = 5.0


class P4RuntimeError(Exception):
    """A P4Runtime call failed; code is the gRPC/RPC status code name."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.code = code


def _write_error(exc: grpc.RpcError) -> P4RuntimeError:
    """The per-update errors a Write reports in its status details."""
    details = []
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for any_msg in status.details:
            err = p4runtime_pb2.Error()
            if any_msg.Unpack(err) and err.canonical_code != code_pb2.OK:
                details.append((code_pb2.Code.Name(err.canonical_code), err.message))
    if not details:
        return P4RuntimeError(f"{exc.code().name}: {exc.details()}", exc.code().name)
    return P4RuntimeError("; ".join(f"{c}: {m}" for c, m in details), details[0][0])


class P4RuntimeClient:
    """Connects to device_id at addr and becomes its primary controller."""

    def __init__(self, addr: str, device_id: int = 0, election_id: tuple[int, int] = (0, 1)):
        self.addr = addr
        self.device_id = device_id
        self.election_id = p4runtime_pb2.Uint128(high=election_id[0], low=election_id[1])
        self.channel = grpc.insecure_channel(addr)
        self.stub = p4runtime_pb2_grpc.P4RuntimeStub(self.channel)
        self._out: queue.Queue = queue.Queue()
        self._arbitration: queue.Queue = queue.Queue()
        self.digests: queue.Queue = queue.Queue()
        self.idle_timeouts: queue.Queue = queue.Queue()
        self._stream = self.stub.StreamChannel(self._requests())
        self._reader = threading.Thread(target=self._read_stream, name="p4rt-stream", daemon=True)
        self._reader.start()
        self._arbitrate()

    # -- stream -----------------------------------------------------------

    def _requests(self) -> Iterator[p4runtime_pb2.StreamMessageRequest]:
        while True:
            msg = self._out.get()
            if msg is None:
                return
            yield msg

    def _read_stream(self) -> None:
        try:
            for msg in self._stream:
                kind = msg.WhichOneof("update")
                if kind == "arbitration":
                    self._arbitration.put(msg.arbitration)
                elif kind == "digest":
                    self.digests.put(msg.digest)
                elif kind == "idle_timeout_notification":
                    self.idle_timeouts.put(msg.idle_timeout_notification)
        except grpc.RpcError as exc:
            self._arbitration.put(exc)

    def _arbitrate(self) -> None:
        req = p4runtime_pb2.StreamMessageRequest()
        req.arbitration.device_id = self.device_id
        req.arbitration.election_id.CopyFrom(self.election_id)
        self._out.put(req)
        try:
            reply = self._arbitration.get(timeout=ARBITRATION_TIMEOUT_S)
        except queue.Empty:
            self.close()
            raise P4RuntimeError(f"no answer from the P4Runtime server at {self.addr}") from None
        if isinstance(reply, grpc.RpcError):
            self.close()
            raise P4RuntimeError(
                f"P4Runtime server at {self.addr}: {reply.code().name}: {reply.details()}",
                reply.code().name,
            )
        if reply.status.code != code_pb2.OK:
            self.close()
            raise P4RuntimeError(
                f"not the primary controller of device {self.device_id}: {reply.status.message}"
            )

    def send(self, msg: p4runtime_pb2.StreamMessageRequest) -> None:
        self._out.put(msg)

    def close(self) -> None:
        self._out.put(None)
        self._stream.cancel()
        self.channel.close()
        self._reader.join(timeout=2)

    # -- pipeline ---------------------------------------------------------

    def set_pipeline(self, p4info_path: Path, device_config_path: Path) -> p4info_pb2.P4Info:
        req = p4runtime_pb2.SetForwardingPipelineConfigRequest(
            device_id=self.device_id,
            election_id=self.election_id,
            action=p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
        )
        text_format.Parse(Path(p4info_path).read_text(), req.config.p4info)
        req.config.p4_device_config = Path(device_config_path).read_bytes()
        try:
            self.stub.SetForwardingPipelineConfig(req)
        except grpc.RpcError as exc:
            raise P4RuntimeError(
                f"pipeline push refused: {exc.code().name}: {exc.details()}", exc.code().name
            ) from None
        return req.config.p4info

    def get_p4info(self) -> p4info_pb2.P4Info:
        req = p4runtime_pb2.GetForwardingPipelineConfigRequest(
            device_id=self.device_id,
            response_type=p4runtime_pb2.GetForwardingPipelineConfigRequest.P4INFO_AND_COOKIE,
        )
        try:
            return self.stub.GetForwardingPipelineConfig(req).config.p4info
        except grpc.RpcError as exc:
            raise P4RuntimeError(
                f"no pipeline on device {self.device_id}: {exc.details()}", exc.code().name
            ) from None

    # -- read / write -----------------------------------------------------

    def write(self, updates: Iterable[p4runtime_pb2.Update]) -> None:
        req = p4runtime_pb2.WriteRequest(device_id=self.device_id, election_id=self.election_id)
        req.updates.extend(updates)
        try:
            self.stub.Write(req)
        except grpc.RpcError as exc:
            raise _write_error(exc) from None

    def read(self, entities: Iterable[p4runtime_pb2.Entity]) -> Iterator[p4runtime_pb2.Entity]:
        req = p4runtime_pb2.ReadRequest(device_id=self.device_id)
        req.entities.extend(entities)
        try:
            for reply in self.stub.Read(req):
                yield from reply.entities
        except grpc.RpcError as exc:
            raise P4RuntimeError(
                f"read failed: {exc.code().name}: {exc.details()}", exc.code().name
            ) from None


def update(kind: str, **entity) -> p4runtime_pb2.Update:
    """update("INSERT", table_entry=te): one Update of a WriteRequest."""
    return p4runtime_pb2.Update(
        type=p4runtime_pb2.Update.Type.Value(kind), entity=p4runtime_pb2.Entity(**entity)
    )

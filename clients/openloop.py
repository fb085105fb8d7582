"""Asynchronous load on one ensemble: open-loop arrivals (Poisson, a fixed rate whatever the
server does) and closed loops (N clients, each sending its next request when the last returns).

    async with Sender(url, "grpc", "bert_onnx_fp32", texts, deadline=10) as sender:
        capacity = await closed_loop(sender, concurrency=32, seconds=3)
        outcomes, lag = await open_loop(sender, rate=3 * capacity.rate, seconds=5)

A closed loop of N clients never has more than N requests waiting, so it cannot overload a server
whose queue holds N; only an open loop can: arrivals keep coming at the offered rate while the
server falls behind, as they do from many independent users. Every request carries one text (the
way single users send them) and is answered, refused as busy, or failed; none is waited for past
its deadline (asyncio.wait_for cancels it). An answer is checked against `expected` (the same
text's answer from a quiet server) when given. The generator runs on the same machine as the
server, so it measures its own CPU time and how far its sends lag behind their schedule: the rate
it really offered is what it sent, not what it was asked for.
"""
from __future__ import annotations

import asyncio
import random
import struct
import time
from dataclasses import dataclass

import numpy as np

from clients.errors import error_message, is_busy
from contract.names import LABEL, PROBABILITIES, TEXT

OK, BUSY, ERROR, WRONG, DEADLINE = "ok", "busy", "error", "wrong", "deadline"


@dataclass
class Outcome:
    scheduled: float     # seconds since the run began: when the request was due
    sent: float          # when it was handed to the client library
    done: float          # when its answer (or refusal) came back
    kind: str            # ok | busy | error | wrong | deadline
    text: int            # index into the sender's texts
    label: str = ""
    probabilities: tuple = ()
    detail: str = ""     # the error message of a refusal or failure

    @property
    def latency(self) -> float:
        return self.done - self.sent

    @property
    def lag(self) -> float:
        return self.sent - self.scheduled


class Sender:
    """One aio client (gRPC or HTTP) sending single-text requests to `model` on `url`."""

    def __init__(self, url: str, protocol: str, model: str, texts: list[str], deadline: float = 10.0,
                 expected: dict | None = None, tolerance: float = 1e-3):
        self.url, self.protocol, self.model = url, protocol, model
        self.texts = [t.encode("utf-8") for t in texts]
        self.deadline = float(deadline)
        self.expected = expected or {}     # text index -> (label, probabilities) from a quiet server
        self.tolerance = tolerance
        self.t0 = time.monotonic()

    async def __aenter__(self):
        if self.protocol == "grpc":
            # each text's request is built once and sent as it is: the generator shares the CPU with
            # the server, and tritonclient would rebuild the protobuf message for every request
            import grpc
            from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
            self._channel = grpc.aio.insecure_channel(self.url)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
            self._requests = [self._grpc_request(service_pb2, t) for t in self.texts]
            self._result = InferResult
        else:
            import tritonclient.http.aio as tc
            # one connection per request in flight: an open loop keeps hundreds waiting at once
            self._client = tc.InferenceServerClient(self.url, conn_limit=4096, conn_timeout=self.deadline)
            self._tc = tc
        return self

    async def __aexit__(self, *exc):
        await (self._channel.close() if self.protocol == "grpc" else self._client.close())

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _grpc_request(self, pb, text: bytes):
        request = pb.ModelInferRequest(model_name=self.model)
        request.inputs.add(name=TEXT, datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(struct.pack("<I", len(text)) + text)   # KServe's BYTES layout
        for name in (LABEL, PROBABILITIES):
            request.outputs.add(name=name)
        return request

    async def _infer(self, index: int):
        if self.protocol == "grpc":
            result = self._result(await self._stub.ModelInfer(self._requests[index]))
        else:
            x = self._tc.InferInput(TEXT, [1, 1], "BYTES")
            x.set_data_from_numpy(np.array([[self.texts[index]]], dtype=np.object_))
            outputs = [self._tc.InferRequestedOutput(n) for n in (LABEL, PROBABILITIES)]
            result = await self._client.infer(self.model, [x], outputs=outputs)
        label = result.as_numpy(LABEL).reshape(-1)[0]
        return (label.decode() if isinstance(label, bytes) else str(label),
                tuple(float(p) for p in result.as_numpy(PROBABILITIES).reshape(-1)))

    async def send(self, index: int, scheduled: float | None = None) -> Outcome:
        sent = self.now()
        scheduled = sent if scheduled is None else scheduled
        try:
            label, probabilities = await asyncio.wait_for(self._infer(index), self.deadline)
        except asyncio.TimeoutError:
            return Outcome(scheduled, sent, self.now(), DEADLINE, index, detail=f"no answer in {self.deadline} s")
        except Exception as e:   # grpc's AioRpcError, tritonclient's InferenceServerException, a socket's error
            message = f"{e.code().name}: {e.details()}" if hasattr(e, "details") else error_message(e)
            kind = BUSY if is_busy(e) else ERROR
            return Outcome(scheduled, sent, self.now(), kind, index, detail=f"{type(e).__name__}: {message}")
        done = self.now()
        want = self.expected.get(index)
        if want and (want[0] != label or np.abs(np.subtract(want[1], probabilities)).max() > self.tolerance):
            return Outcome(scheduled, sent, done, WRONG, index, label, probabilities,
                           f"expected {want[0]} {want[1]}, got {label} {probabilities}")
        return Outcome(scheduled, sent, done, OK, index, label, probabilities)


@dataclass
class LoopResult:
    outcomes: list
    seconds: float           # from the first send to the last answer
    cpu_seconds: float       # this process's CPU time over the run (the generator's own cost)
    sending_seconds: float = 0.0   # from the first send to the last: the rate really offered is over this

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.outcomes)

    @property
    def rate(self) -> float:
        """Answers per second."""
        return self.count(OK) / self.seconds if self.seconds > 0 else 0.0


async def closed_loop(sender: Sender, concurrency: int, seconds: float, seed: int = 0) -> LoopResult:
    """`concurrency` clients sending back to back for `seconds`: the server's capacity at that level."""
    rng = random.Random(seed)
    outcomes, start, cpu = [], sender.now(), time.process_time()

    async def client():
        while sender.now() - start < seconds:
            outcomes.append(await sender.send(rng.randrange(len(sender.texts))))
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return LoopResult(outcomes, sender.now() - start, time.process_time() - cpu)


async def open_loop(sender: Sender, rate: float, seconds: float, seed: int = 0) -> LoopResult:
    """Poisson arrivals at `rate` per second for `seconds`, each sent when due whatever the server is
    doing (a late generator sends at once, and the lag says by how much); waits for every answer."""
    rng = random.Random(seed)
    tasks, due, start, cpu = [], 0.0, sender.now(), time.process_time()
    while True:
        due += rng.expovariate(rate)
        if due >= seconds:
            break
        delay = start + due - sender.now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(sender.send(rng.randrange(len(sender.texts)), start + due)))
    outcomes = await asyncio.gather(*tasks)
    sends = [o.sent for o in outcomes]
    return LoopResult(list(outcomes), sender.now() - start, time.process_time() - cpu,
                      max(sends) - min(sends) if len(sends) > 1 else seconds)


async def quiet_answers(sender: Sender, concurrency: int = 4) -> dict:
    """Each text's answer from the server before any load: what every later answer must match."""
    answers, todo = {}, list(range(len(sender.texts)))

    async def client():
        while todo:
            i = todo.pop()
            o = await sender.send(i)
            if o.kind != OK:
                raise RuntimeError(f"text {i} failed on a quiet server: {o.detail}")
            answers[i] = (o.label, o.probabilities)
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return answers

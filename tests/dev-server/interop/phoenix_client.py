#!/usr/bin/env python3
"""Interop check with a Phoenix client that is not khala-sync's.

Usage: phoenix_client.py BASE_URL TOPIC RESUME_AFTER EXPECT_HEAD

EXPECT_HEAD is a lower bound, so the script also works against a server with a live generator.

Mints a token over HTTP, joins `sync:v1` on the Phoenix v2 JSON serializer, subscribes with
`resume_after` (list form), checks the replay (ascending, contiguous watermarks from
RESUME_AFTER+1 to EXPECT_HEAD, the last batch `replay_complete: true`, the reply after the
batches), then asks the server to publish one more update over HTTP and waits for the live push.
Prints "OK <n> updates" and exits 0 on success; exits 1 with a message otherwise.
"""
import asyncio
import json
import sys
import urllib.request

import websockets


def post(url, body, token=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def fail(msg):
    print("FAIL " + msg)
    sys.exit(1)


async def main(base, topic, resume_after, expect_head):
    token = post(base + "/api/sync/token", {"topics": [topic]}, "dev-app-token")["data"]["token"]
    ws_url = base.replace("http://", "ws://") + "/sync/socket/websocket?vsn=2.0.0&token=" + token
    async with websockets.connect(ws_url) as ws:
        async def recv():
            return json.loads(await asyncio.wait_for(ws.recv(), timeout=10))

        await ws.send(json.dumps(["1", "1", "sync:v1", "phx_join", {}]))
        join = await recv()
        if join[:4] != ["1", "1", "sync:v1", "phx_reply"] or join[4]["status"] != "ok":
            fail("join: %r" % (join,))
        await ws.send(json.dumps(["1", "2", "sync:v1", "sync:subscribe", {
            "topics": [topic],
            "resume_after": [{"topic": topic, "watermark": resume_after}],
            "replay_batch_size": 7,
        }]))
        expected = resume_after + 1
        last_complete = None
        while True:
            msg = await recv()
            if msg[3] == "phx_reply":
                if msg[1] != "2" or msg[4]["status"] != "ok":
                    fail("subscribe reply: %r" % (msg,))
                current = msg[4]["response"]["current_watermarks"][0]["watermark"]
                if expected - 1 < current:
                    fail("reply says head %d but replay ended at %d" % (current, expected - 1))
                break
            if msg[3] != "sync:update_batch":
                continue
            batch = msg[4]
            if len(batch["updates"]) > 7:
                fail("batch larger than replay_batch_size")
            for u in batch["updates"]:
                if u["watermark"] != expected:
                    fail("expected watermark %d, got %d" % (expected, u["watermark"]))
                expected += 1
            last_complete = batch["replay_complete"]
        if expected - 1 < expect_head:
            fail("replay ended at %d, expected head >= %d" % (expected - 1, expect_head))
        if expect_head > resume_after and last_complete is not True:
            fail("last replay batch lacks replay_complete: true")
        post(base + "/dev/publish", {"topic": topic, "doc_key": "interop/live", "payload": {"live": True}})
        while True:
            msg = await recv()
            if msg[3] == "sync:update_batch":
                if msg[4]["replay_complete"] is not True:
                    fail("live push without replay_complete: true")
                u = msg[4]["updates"][0]
                if u["watermark"] != expected:
                    fail("live push out of order: %r (expected %d)" % (u, expected))
                expected += 1
                if u["doc_key"] == "interop/live":
                    break
    print("OK %d updates" % (expected - 1 - resume_after))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))

#!/usr/bin/env python3
"""A ferry client in Python (websocket-client: `pip install websocket-client`, or Debian's
python3-websocket): publishes orders idempotently and consumes them in group `billing`,
dropping ids already processed (a set of them, not the last id: messages of different keys
overtake each other), acking each once processed.

    python3 docs/clients/orders.py ws://127.0.0.1:7700/ws 3

publishes 3 orders to topic `orders`, prints each as the group receives it, and exits once all
3 were processed (status 0), or after 30 s (status 1).
"""
import itertools
import json
import sys
import time
import uuid

import websocket  # websocket-client


class Ferry:
    def __init__(self, url):
        self.ws = websocket.create_connection(url, timeout=30)
        self.welcome = json.loads(self.ws.recv())
        self.reqs = itertools.count(1)
        self.producer = "orders-py-" + uuid.uuid4().hex[:8]  # names this client's publishes
        self.seqs = itertools.count(1)
        self.pushed = []  # msg and error frames that arrived while waiting for an answer

    def request(self, frame):
        """Sends `frame` with a fresh req and returns the answer to it (raises on `error`)."""
        req = next(self.reqs)
        self.ws.send(json.dumps({**frame, "req": req}))
        while True:
            answer = json.loads(self.ws.recv())
            if answer.get("req") != req:
                self.pushed.append(answer)
            elif answer["op"] == "error":
                raise RuntimeError(f"{answer['code']}: {answer['message']}")
            else:
                return answer

    def publish(self, topic, body, key=None):
        """Returns the id once durable; the same producer + seq makes a retry store it once."""
        frame = {"op": "pub", "topic": topic, "body": body, "producer": self.producer, "seq": next(self.seqs)}
        if key is not None:
            frame["key"] = key
        for _ in range(50):
            try:
                return self.request(frame)["id"]
            except RuntimeError as error:
                if not str(error).startswith(("overloaded", "unavailable")):
                    raise
                time.sleep(0.1)
        raise RuntimeError("still overloaded after 50 tries")

    def next_pushed(self):
        return self.pushed.pop(0) if self.pushed else json.loads(self.ws.recv())

    def ack(self, topic, group, ids):
        self.ws.send(json.dumps({"op": "ack", "topic": topic, "group": group, "ids": ids}))

def main():
    url, count = sys.argv[1], int(sys.argv[2])
    ferry = Ferry(url)
    ferry.request({"op": "sub", "topic": "orders", "group": "billing", "from": "latest", "window": 16})
    ids = [ferry.publish("orders", {"order": n}, key=f"customer-{n % 2}") for n in range(count)]
    print(f"published {ids}", flush=True)
    processed = set()  # a real consumer keeps a window of recent ids, durably if it must
    deadline = time.time() + 30
    while not set(ids) <= processed:
        if time.time() > deadline:
            print(f"timed out: processed {sorted(processed)} of {ids}", file=sys.stderr)
            return 1
        m = ferry.next_pushed()
        if m["op"] != "msg":
            print(f"server says: {m}", file=sys.stderr)
            continue
        if m["id"] in processed:  # a redelivery of what was processed: ack it again, skip it
            ferry.ack("orders", "billing", [m["id"]])
            continue
        print(f"processed {m['id']}: {json.dumps(m['body'])}", flush=True)
        processed.add(m["id"])
        ferry.ack("orders", "billing", [m["id"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())

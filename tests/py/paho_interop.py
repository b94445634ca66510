#!/usr/bin/env python3
"""Interoperability with Eclipse Paho (paho-mqtt for Python), run by tests/tests/clients.rs.

    python3 tests/py/paho_interop.py <tcp port> <ws port>

Three rounds against a running broker: MQTT 3.1.1 over TCP, MQTT 5.0 over TCP, MQTT 5.0 over
WebSocket (path /mqtt). Each round connects a subscriber and a publisher, exchanges QoS 0, 1
and 2 messages, and checks what arrives (v5: user properties, content type, subscription
identifier, no local). Prints one line per round; exits non-zero on the first failure.
"""
import queue
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WAIT = 10


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def client(name, port, v5, transport):
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    c = mqtt.Client(client_id=name, protocol=protocol, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    events = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props=None: events.put(("connack", rc))
    c.on_subscribe = lambda cl, ud, mid, granted, props=None: events.put(("suback", granted))
    c.on_message = lambda cl, ud, msg: events.put(("message", msg))
    c.on_publish = lambda cl, ud, mid: events.put(("published", mid))
    if v5:
        c.connect("127.0.0.1", port, keepalive=30, clean_start=True)
    else:
        c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    kind, rc = events.get(timeout=WAIT)
    if kind != "connack" or rc != 0:
        fail(f"{name}: CONNACK {rc}")
    return c, events


def expect(events, kind):
    while True:
        k, value = events.get(timeout=WAIT)
        if k == kind:
            return value


def round_trip(label, port, v5, transport):
    topic = f"paho/{label}"
    sub, sub_events = client(f"paho-sub-{label}", port, v5, transport)
    pub, pub_events = client(f"paho-pub-{label}", port, v5, transport)
    if v5:
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = 7
        sub.subscribe(topic, options=SubscribeOptions(qos=2, noLocal=True), properties=props)
    else:
        sub.subscribe(topic, qos=2)
    granted = expect(sub_events, "suback")
    qos = granted[0].value if v5 else granted[0]
    if qos != 2:
        fail(f"{label}: granted {granted}")
    if v5:
        # No local: the subscriber's own message does not come back.
        sub.publish(topic, b"own", qos=1)
    for q in (0, 1, 2):
        props = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("k", f"v{q}")
            props.ContentType = "text/plain"
        pub.publish(topic, f"qos{q}".encode(), qos=q, properties=props)
    seen = {}
    while len(seen) < 3:
        msg = expect(sub_events, "message")
        if msg.payload == b"own":
            fail(f"{label}: no local ignored")
        seen[msg.payload.decode()] = msg
    for q in (0, 1, 2):
        msg = seen.get(f"qos{q}")
        if msg is None or msg.qos != q:
            fail(f"{label}: qos{q} missing or wrong QoS: {seen}")
        if v5:
            p = msg.properties
            if getattr(p, "UserProperty", None) != [("k", f"v{q}")]:
                fail(f"{label}: user properties {p}")
            if getattr(p, "ContentType", None) != "text/plain":
                fail(f"{label}: content type {p}")
            if getattr(p, "SubscriptionIdentifier", None) != [7]:
                fail(f"{label}: subscription id {p}")
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()
    print(f"ok {label}: QoS 0/1/2 delivered" + (" with v5 properties" if v5 else ""))


def main():
    tcp, ws = int(sys.argv[1]), int(sys.argv[2])
    round_trip("v311-tcp", tcp, False, "tcp")
    round_trip("v5-tcp", tcp, True, "tcp")
    round_trip("v5-ws", ws, True, "websockets")


if __name__ == "__main__":
    main()

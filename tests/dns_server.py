#!/usr/bin/python3
"""A small authoritative DNS server for the discovery tests, built on dnslib.

Usage: dns_server.py ZONE_JSON PORT

Listens on 127.0.0.1:PORT over UDP and TCP. The zone is read from ZONE_JSON at every query, so
the test changes the records by rewriting the file (atomically, by rename). Its form:

    {"api.test.": {"ttl": 1, "A": ["127.0.0.2", "127.0.0.3"], "AAAA": ["::1"]},
     "_http._tcp.svc.test.": {"ttl": 1, "SRV": [[priority, weight, port, "target.test."]]}}

A name not in the zone is NXDOMAIN; a name without records of the type asked is an empty
NOERROR answer. SRV answers carry the targets' A/AAAA records as additional records. Prints
`ready` on standard output once both listeners are bound.
"""
import json
import sys
import time

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel
from dnslib.server import BaseResolver, DNSServer


def load_zone(path):
    try:
        with open(path) as f:
            zone = json.load(f)
    except (OSError, ValueError):
        return {}
    return {str(DNSLabel(name)).lower(): records for name, records in zone.items()}


class ZoneResolver(BaseResolver):
    def __init__(self, path):
        self.path = path

    def addresses(self, zone, name, reply, section):
        records = zone.get(name.lower(), {})
        ttl = int(records.get("ttl", 1))
        for ip in records.get("A", []):
            section(RR(name, QTYPE.A, rdata=A(ip), ttl=ttl))
        for ip in records.get("AAAA", []):
            section(RR(name, QTYPE.AAAA, rdata=AAAA(ip), ttl=ttl))

    def resolve(self, request, handler):
        zone = load_zone(self.path)
        reply = request.reply()
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        records = zone.get(qname.lower())
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        ttl = int(records.get("ttl", 1))
        if qtype == "A":
            for ip in records.get("A", []):
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(ip), ttl=ttl))
        elif qtype == "AAAA":
            for ip in records.get("AAAA", []):
                reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=ttl))
        elif qtype == "SRV":
            targets = []
            for priority, weight, port, target in records.get("SRV", []):
                reply.add_answer(
                    RR(qname, QTYPE.SRV, rdata=SRV(priority, weight, port, target), ttl=ttl)
                )
                targets.append(str(DNSLabel(target)))
            for target in dict.fromkeys(targets):
                self.addresses(zone, target, reply, reply.add_ar)
        return reply


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    resolver = ZoneResolver(path)
    servers = [
        DNSServer(resolver, port=port, address="127.0.0.1", tcp=tcp, logger=Quiet())
        for tcp in (False, True)
    ]
    for server in servers:
        server.start_thread()
    print("ready", flush=True)
    while all(s.isAlive() for s in servers):
        time.sleep(0.2)


class Quiet:
    """dnslib's logger interface, saying nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


if __name__ == "__main__":
    main()

"""The twistd plugin for ocm: C{twistd -n ocm --help}."""

from twisted.application.service import ServiceMaker

ocm = ServiceMaker("ocm", "ocm.tap", "ocm chat rooms: TCRP over TCP, chat relay over UDP", "ocm")

"""Calls one SOAP operation with zeep, as a real SOAP client would, for Gantry's tests.

Usage: zeep_client.py WSDL_URL BINDING ADDRESS OPERATION JSON_ARGUMENTS
Reads the service description from WSDL_URL, sends to ADDRESS with BINDING (`{ns}name`), and
prints {"result": ...} or, for a SOAP Fault, {"fault": {"code": ..., "message": ...}}.
"""

import json
import sys

import zeep
from zeep.exceptions import Fault
from zeep.helpers import serialize_object


def main():
    wsdl_url, binding, address, operation, arguments = sys.argv[1:6]
    client = zeep.Client(wsdl_url)
    service = client.create_service(binding, address)
    try:
        result = getattr(service, operation)(**json.loads(arguments))
        print(json.dumps({"result": serialize_object(result)}, default=str))
    except Fault as fault:
        print(json.dumps({"fault": {"code": fault.code, "message": fault.message}}))


if __name__ == "__main__":
    main()

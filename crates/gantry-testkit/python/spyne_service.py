"""A real SOAP service for Gantry's end-to-end tests, written with spyne.

Serves one calculator service twice: SOAP 1.1 at /soap11 and SOAP 1.2 at /soap12 (each
answers `?wsdl` with its WSDL). Binds 127.0.0.1 on the port the system picks and prints
`listening <port>` once it accepts connections; runs until killed.
"""

import importlib.util
import logging
import os
import sys


def _install_six_importer_shim():
    """spyne 2.14 bundles six 1.15 as `spyne.util.six`, whose `six.moves` importer has only
    `find_module`, which Python 3.12 no longer calls: `spyne.util.six.moves.*` then fails to
    import. Load that module before spyne does, with the `find_spec` six 1.16 added."""
    if sys.version_info < (3, 12) or "spyne.util.six" in sys.modules:
        return
    package = importlib.util.find_spec("spyne")
    path = os.path.join(os.path.dirname(package.origin), "util", "six.py")
    spec = importlib.util.spec_from_file_location("spyne.util.six", path)
    six = importlib.util.module_from_spec(spec)
    sys.modules["spyne.util.six"] = six
    spec.loader.exec_module(six)
    importer = type(next(hook for hook in sys.meta_path if type(hook).__name__ == "_SixMetaPathImporter"
                         and hook.name == "spyne.util.six"))
    if not hasattr(importer, "find_spec"):
        def find_spec(self, fullname, path, target=None):
            return importlib.util.spec_from_loader(fullname, self) if fullname in self.known_modules else None

        importer.find_spec = find_spec
        importer.create_module = lambda self, spec: self.load_module(spec.name)
        importer.exec_module = lambda self, module: None


_install_six_importer_shim()

from spyne import Application, Fault, Integer, Iterable, ServiceBase, Unicode, rpc
from spyne.protocol.soap import Soap11, Soap12
from spyne.server.wsgi import WsgiApplication
from spyne.util.wsgi_wrapper import WsgiMounter
from wsgiref.simple_server import WSGIRequestHandler, make_server

NAMESPACE = "urn:gantry:calculator"


class CalculatorService(ServiceBase):
    @rpc(Integer, Integer, _returns=Integer)
    def Add(ctx, a, b):
        return a + b

    @rpc(Integer, Integer, _returns=Integer)
    def Divide(ctx, dividend, divisor):
        if divisor == 0:
            raise Fault(faultcode="Client.DivisionByZero", faultstring="cannot divide by zero",
                        detail={"dividend": str(dividend)})
        return dividend // divisor

    @rpc(Unicode, Integer, _returns=Iterable(Unicode))
    def SayHello(ctx, name, times):
        for _ in range(times or 1):
            yield "Hello, %s" % name

    @rpc()
    def Crash(ctx):
        raise Fault(faultcode="Server", faultstring="the calculator broke")


def application(protocol):
    return WsgiApplication(Application([CalculatorService], tns=NAMESPACE, name="Calculator",
                                       in_protocol=protocol(), out_protocol=protocol()))


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        sys.stderr.write("%s\n" % (args[0] % args[1:]))


def main():
    logging.basicConfig(level=logging.WARNING)
    mounter = WsgiMounter({"soap11": application(Soap11), "soap12": application(Soap12)})
    server = make_server("127.0.0.1", 0, mounter, handler_class=QuietHandler)
    print("listening %d" % server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

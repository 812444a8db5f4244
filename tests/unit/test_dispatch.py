"""conf.dispatch: (env, stdin) -> (exit status, stdout) with the spec's error codes."""
import json
import logging

import pytest

from conf.cni import SUPPORTED_VERSIONS, load_result
from conf.dispatch import LATEST, Request, run
from conf.errors import AddressExhaustedError, TryAgainError

ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def config(version="1.1.0", **extra) -> bytes:
    return json.dumps({"cniVersion": version, "name": "net", "type": "t", **extra}).encode()


class Recorder:
    """Handlers that record their requests and return a canned reply."""

    def __init__(self, reply=None):
        self.calls: list[Request] = []
        self.reply = reply

    def __call__(self, req: Request):
        self.calls.append(req)
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply

    def handlers(self):
        return {verb: self for verb in ("ADD", "DEL", "CHECK", "GC", "STATUS")}


def dispatch(command, stdin=b"", reply=None, env=ENV, netns_fd=None):
    rec = Recorder(reply)
    status, out = run(rec.handlers(), {**env, "CNI_COMMAND": command}, stdin, netns_fd)
    assert out.count(b"\n") <= 1, "stdout must hold one JSON document"
    return status, json.loads(out) if out.strip() else None, rec.calls


def test_version_lists_every_supported_version():
    status, out, calls = dispatch("VERSION")
    assert status == 0 and calls == []
    assert out == {"cniVersion": LATEST, "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    assert list(SUPPORTED_VERSIONS) == out["supportedVersions"]


def test_version_answers_in_the_config_version_even_with_garbage_stdin():
    assert dispatch("VERSION", config("0.4.0"))[1]["cniVersion"] == "0.4.0"
    assert dispatch("VERSION", b"{not json")[:2] == (0, {"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)})


@pytest.mark.parametrize("command", ["FROB", "add", ""])
def test_unknown_command_is_code_4(command):
    status, out, calls = dispatch(command, config())
    assert status == 1 and out["code"] == 4 and calls == []


def test_missing_container_id_is_code_4_before_the_handler():
    env = {k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}
    status, out, calls = dispatch("ADD", config(), env=env)
    assert (status, out["code"], calls) == (1, 4, []) and "CNI_CONTAINERID" in out["msg"]


@pytest.mark.parametrize("stdin,code", [(b"{", 6), (b"", 6), (config("0.2.0"), 1), (config("2.0.0"), 1)])
def test_bad_stdin_codes(stdin, code):
    status, out, calls = dispatch("ADD", stdin)
    assert (status, out["code"], calls) == (1, code, [])
    assert out["cniVersion"] == LATEST  # no usable version in the config


@pytest.mark.parametrize("command,version", [("CHECK", "0.3.1"), ("CHECK", "0.3.0"),
                                             ("GC", "1.0.0"), ("STATUS", "1.0.0"), ("GC", "0.4.0")])
def test_verb_newer_than_the_config_is_code_1(command, version):
    status, out, calls = dispatch(command, config(version))
    assert (status, out["code"], calls) == (1, 1, []) and command in out["msg"]
    assert out["cniVersion"] == version


@pytest.mark.parametrize("command,version", [("CHECK", "0.4.0"), ("GC", "1.1.0"), ("STATUS", "1.1.0"),
                                             ("DEL", "0.3.0")])
def test_verb_at_its_minimum_version_runs(command, version):
    status, out, calls = dispatch(command, config(version))
    assert (status, out, len(calls)) == (0, None, 1)


def test_request_carries_env_raw_stdin_and_netns_fd():
    stdin = config("1.0.0", ipam={"type": "x"})
    _, _, calls = dispatch("ADD", stdin, netns_fd=7)
    req = calls[0]
    assert (req.env.container_id, req.env.ifname, req.version) == ("c1", "eth0", "1.0.0")
    assert req.raw["ipam"] == {"type": "x"} and req.stdin == stdin and req.netns_fd == 7


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_result_is_rendered_for_the_config_version(version):
    result = load_result({"ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}]})
    status, out, _ = dispatch("ADD", config(version), reply=result)
    assert status == 0 and out == result.render(version)
    assert ("version" in out["ips"][0]) == version.startswith("0.")


def test_dict_reply_passes_through_and_none_is_empty_stdout():
    assert dispatch("ADD", config(), reply={"custom": 1})[:2] == (0, {"custom": 1})
    assert dispatch("DEL", config(), reply=None)[:2] == (0, None)


def test_verb_without_handler_is_a_successful_no_op():
    status, out = run({}, {**ENV, "CNI_COMMAND": "GC"}, config())
    assert (status, out) == (0, b"")


@pytest.mark.parametrize("error,code", [(AddressExhaustedError("no IP addresses available in range set: x", "d"), 100),
                                        (TryAgainError("later"), 11)])
def test_cni_error_from_handler_keeps_code_msg_details(error, code):
    status, out, _ = dispatch("ADD", config("0.4.0"), reply=error)
    assert status == 1
    assert out == {"cniVersion": "0.4.0", "code": code, "msg": error.msg, **({"details": "d"} if code == 100 else {})}


def test_foreign_exception_is_999_one_line_and_traceback_only_in_the_log(caplog):
    caplog.set_level(logging.INFO, logger="flannelette")
    status, out, _ = dispatch("ADD", config(), reply=ValueError("first line\nsecond line"))
    assert status == 1 and out["code"] == 999
    assert out["msg"] == "internal error: ValueError: first line"
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert record.exc_info[0] is ValueError  # the traceback travels with the record

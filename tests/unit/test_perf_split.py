"""bench/perf_split.py: perf's stacks, each put where the server spent it."""

from __future__ import annotations

import pytest

from bench.perf_split import category, kernel_shares, load, load_samples, split

LOOP = ["uv__io_poll", "uv_run", "_PyEval_EvalFrameDefault", "main"]
ROUTE = ["receiver_route", "receiver_handle", "Reader_readable", *LOOP]


@pytest.mark.parametrize(("inner", "expected"), [
    (["udp_sendmsg", "__libc_sendto", "output_finish", "forward_plain", "receive_plain",
      *ROUTE], "route: SRTP protect and sendto"),
    (["_PyObject_Malloc", "_PyEval_EvalFrameDefault", "call_void", "receive_plain", *ROUTE],
     "route: receive and fan-out, Python called back"),
    (["slot_put", "forward_plain", "receive_plain", *ROUTE], "route: receive and fan-out in C"),
    (["parse_rtp", *ROUTE], "route: RTP parse"),
    (["_PyEval_EvalFrameDefault", "call_method", *ROUTE], "route: on_rtp in Python (slow path)"),
    (["PyDict_GetItem", *ROUTE], "route: other"),
    (["aes_icm_encrypt", "srtp_unprotect_mki", "Reader_readable", *LOOP],
     "read: SRTP unprotect"),
    (["do_recvmmsg", "__sys_recvmmsg", "Reader_readable", *LOOP], "read: recvmmsg"),
    (["_PyEval_EvalFrameDefault", "call_rx", "Reader_readable", *LOOP],
     "read: RTCP and STUN in Python"),
    (["reader_dispatch", "Reader_readable", *LOOP], "read: other"),
    (["finish_task_switch", "do_epoll_wait", *LOOP], "loop: waiting in epoll (and being woken)"),
    (["PyFloat_FromDouble", "_PyEval_EvalFrameDefault", "uv__run_timers", *LOOP],
     "Python run by the loop: control plane, signalling, timers"),
    (["PyFloat_FromDouble", "_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault"],
     "Python run by the loop: control plane, signalling, timers"),  # cut short by perf
    (["__pyx_f_6uvloop_4loop_6Handle__run", *LOOP], "other"),  # the loop's own C
    (["__memmove_avx512_unaligned_erms"], "other"),
])
def test_each_stack_goes_to_the_first_category_it_fits(inner: list[str], expected: str) -> None:
    assert category(inner) == expected


def test_stacks_are_read_from_perf_script_and_shared_out() -> None:
    # perf script -F sym,ip: an address and a symbol a line (perf may add the object in
    # parentheses), innermost first, a blank line between samples.
    text = """
    7f0a1 output_finish (/x/_fastpath.so)
    7f0a2 receiver_route

    ffffa do_epoll_wait ([kernel.kallsyms])

    7f0a3 output_finish
    7f0a4 receiver_route
    """
    stacks = load(text.splitlines())
    assert stacks == [["output_finish", "receiver_route"], ["do_epoll_wait"],
                      ["output_finish", "receiver_route"]]
    assert split(stacks) == [("route: SRTP protect and sendto", pytest.approx(2 / 3)),
                             ("loop: waiting in epoll (and being woken)", pytest.approx(1 / 3))]
    assert split([]) == []
    # The kernel's part: a sample whose innermost frame has a kernel address.
    text_k = """
    ffffffff81a2b3c4 _raw_spin_unlock_irqrestore
    7f0a1 output_finish
    7f0a2 receiver_route

    7f0a1 output_finish
    7f0a2 receiver_route

    ffffffff81000010 finish_task_switch.isra.0
    ffffffff81000020 do_epoll_wait
    """
    samples = load_samples(text_k.splitlines())
    assert [kernel for _, kernel in samples] == [True, False, True]
    assert kernel_shares(samples) == {
        "route: SRTP protect and sendto": pytest.approx(1 / 3),
        "loop: waiting in epoll (and being woken)": pytest.approx(1 / 3)}
    assert kernel_shares([]) == {}

"""Build configuration beyond pyproject.toml: the packet path's C extension.

``mediaserver.sfu._fastpath`` (header + SRTP protect + send per forwarded packet) needs a C
compiler and the Python headers. It is optional: without a compiler the install still
succeeds and the server forwards through the pure-Python path (it says so at start-up).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mediaserver.sfu._fastpath",
            sources=["mediaserver/sfu/_fastpath.c"],
            # No fused multiply-add: the jitter and abs-send-time arithmetic must round as
            # Python's floats do, to the bit (tests compare the C path with the Python one).
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-ffp-contract=off"],
            optional=True,
        ),
    ],
)

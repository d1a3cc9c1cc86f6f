"""torch's own distributed test suite (``distributed_test.py``) run on the ``pyc10d`` backend.

``config`` sets the environment the suite reads, ``suite`` builds torch's test class for one
backend, ``run_suite`` is the command-line runner (full suite, pyc10d or Gloo), and
``test_torch_suite_fast`` is the fast subset pytest runs. Results: ``RESULTS.md``.
"""

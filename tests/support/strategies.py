"""Hypothesis strategies shared by the fuzz tests of kubeloop's servers."""

from __future__ import annotations

from hypothesis import strategies as st

# Any JSON document of a few levels: what a client might send where an object is expected.
json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)

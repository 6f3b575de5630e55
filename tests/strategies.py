"""Hypothesis strategies shared by the property tests: random clinical timelines.

``result_specs`` draws results ((analyte, day, hour), value); ``censored_specs`` adds a comparator
to some (value = the assay's limit); ``course_specs`` draws clinical and course events
(kind, day). ``timeline`` builds one patient's records from them, in the order drawn. ``mutated`` damages a
seed input the way the fuzzers do.
"""

from hypothesis import strategies as st

from schemas.vocab import Analyte
from streams.testing import Timeline

ANALYTE_VALUES = {
    Analyte.ANC: st.sampled_from([50, 100, 101, 300, 500, 501, 900, 1200, 1600, 4000]),
    Analyte.PLATELETS: st.sampled_from([10, 19, 20, 49, 50, 120, 250]),
    Analyte.IGG: st.sampled_from([150, 399, 400, 401, 800]),
    Analyte.CD19_PCT: st.sampled_from([0.0, 0.5, 0.99, 1.0, 1.5, 2.0, 5.0]),
    Analyte.CD19_ABS: st.sampled_from([0, 5, 9, 10, 15, 20, 60]),
    Analyte.FERRITIN: st.sampled_from([200, 400, 700, 1500, 5000, 12000]),
    Analyte.FIBRINOGEN: st.sampled_from([90, 149, 150, 300]),
    Analyte.ALT: st.sampled_from([30, 200, 201, 600]),
    Analyte.TRIGLYCERIDES: st.sampled_from([150, 265, 266, 400]),
}
COURSE_KINDS = (
    "ivig_given",
    "reinfusion",
    "crs_resolved",
    "hct_performed",
    "relapse",
    "end_of_follow_up",
)

result_specs = st.lists(
    st.tuples(
        st.sampled_from(sorted(ANALYTE_VALUES)),
        st.integers(min_value=-5, max_value=220),
        st.integers(min_value=0, max_value=23),
    ).flatmap(lambda spec: st.tuples(st.just(spec), ANALYTE_VALUES[spec[0]])),
    min_size=1,
    max_size=40,
)

#: results, some censored: ((analyte, day, hour), value, comparator or None)
censored_specs = st.lists(
    st.tuples(
        st.sampled_from(sorted(ANALYTE_VALUES)),
        st.integers(min_value=-5, max_value=220),
        st.integers(min_value=0, max_value=23),
    ).flatmap(
        lambda spec: st.tuples(
            st.just(spec),
            ANALYTE_VALUES[spec[0]],
            st.sampled_from([None, None, None, "<", ">", "<=", ">="]),
        )
    ),
    min_size=1,
    max_size=40,
)

course_specs = st.lists(
    st.tuples(st.sampled_from(COURSE_KINDS), st.integers(min_value=1, max_value=220)),
    max_size=3,
)


def timeline(specs: list, patient: str = "PROP", courses: list | tuple = ()) -> Timeline:
    t = Timeline(patient).infusion(risk_factors=["high_disease_burden"])
    for spec in specs:
        (analyte, day, hour), value, *rest = spec
        comparator = rest[0] if rest else None
        if comparator is None:
            t.lab(analyte, day, value, hour=hour)
        else:
            t.lab(analyte, day, value, hour=hour, comparator=comparator)
    for kind, day in courses:
        t.event(kind, day=day, detail="cd19_negative" if kind == "relapse" else None)
    return t


@st.composite
def mutated(draw: st.DrawFn, seed_list: list[bytes]) -> bytes:
    """A fixture message with bytes flipped, cut, duplicated or inserted."""
    data = bytearray(draw(st.sampled_from(seed_list)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "copy", "insert"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif action == "copy":
            piece = data[at : at + draw(st.integers(1, 64))]
            data[at:at] = piece * draw(st.integers(1, 50))
        else:
            data[at:at] = draw(
                st.sampled_from(
                    [
                        b"\\",
                        b"^",
                        b"~",
                        b"|",
                        b"&",
                        b"\r",
                        b"\x0b",
                        b"\x1c",
                        b"\xed\xa0\x80",
                        b'"',
                        b"{",
                        b"[",
                        b"\\ud800",
                        b"<",
                        b"1e999",
                        b"NaN",
                        b"\x00",
                    ]
                )
            )
    return bytes(data)

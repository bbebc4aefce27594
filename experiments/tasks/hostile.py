"""Hostile completions: what a policy under RL pressure may emit to a verifier. Used to test that a verifier
scores them 0 within its time bound and never executes them (tests/experiments, benchmarks/bench_verify.py).

Every completion is wrong for any reference answer that is a small number. ``marker`` is a path that the code
payloads would create if anything evaluated them as Python or shell: a test checks it never appears.
"""

from __future__ import annotations


def hostile_completions(marker: str, n: int = 64) -> list[str]:
    """``n`` hostile completions (the base set of 64 repeated or cut): giant powers and towers, factorials,
    nested fractions, braces and roots, huge sums and matrices, megabyte strings, NUL bytes, and code."""
    boxed = [
        # giant powers and towers: sympy evaluates big-integer powers while holding the GIL
        "9^{9^{9^{9^{9}}}}",
        "10^{10^{10^{10}}}",
        "2^{2^{2^{2^{2^{2^{2}}}}}}",
        "99999^{99999^{99999}}",
        "(10^{10^{10}})^{10^{10^{10}}}",
        "9^{9^{9^{9}}} - 9^{9^{9^{9}}} + 7",
        "\\left(10^{100}\\right)^{10^{100}}",
        "e^{e^{e^{e^{e^{10}}}}}",
        "7^{7^{7^{7^{7}}}} \\bmod 10",
        "3\\uparrow\\uparrow\\uparrow 3",
        "{10^{10^{10^{10}}}}^{10^{10}}",
        "\\sqrt{9^{9^{9^{9^{9}}}}}",
        "\\frac{9^{9^{9^{9}}}}{9^{9^{9^{8}}}}",
        "\\log(9^{9^{9^{9^{9}}}})",
        "-9^{9^{9^{9^{9}}}}",
        "1.5^{1.5^{1.5^{1.5^{1000000}}}}",
        # factorials and combinatorics on huge arguments
        "(10^{10})!",
        "100000000!",
        "9!!!!!!!!",
        "\\binom{10^{12}}{10^{6}}",
        "\\Gamma(10^{20})",
        # nested fractions, braces, roots
        "\\frac{1}{" * 150 + "2" + "}" * 150,
        "{" * 400 + "1" + "}" * 400,
        "\\sqrt{" * 120 + "2" + "}" * 120,
        "(" * 450 + "1" + ")" * 450,
        "\\frac{\\frac{\\frac{9^{9^{9}}}{7}}{5}}{3^{3^{3^{3}}}}",
        "\\left(" * 80 + "x" + "\\right)" * 80,
        # sums, products, integrals and matrices with huge ranges
        "\\sum_{n=1}^{10^{12}} n^{n}",
        "\\prod_{k=1}^{10^{9}} k",
        "\\int_0^{10^{10}} x^{x^{x}}\\,dx",
        "\\lim_{n\\to\\infty} (1+1/n)^{n^{n}}",
        "\\begin{pmatrix}" + " & ".join(["9^{99}"] * 30) + "\\end{pmatrix}^{1000}",
        "\\det\\begin{pmatrix}" + "\\\\".join([" & ".join(["x"] * 12)] * 12) + "\\end{pmatrix}",
        "10^{-10^{10}}",
        "0.\\overline{9}^{10^{10}}",
        "\\infty - \\infty",
        # malformed LaTeX
        "\\frac{1}{0}",
        "\\frac{",
        "}}}{{{",
        "\\begin{array}",
        "\\left(\\right",
        "^^^^^^^^",
        "\\boxed{\\boxed{\\boxed{\\boxed{1}}}}",
        # code: a verifier that evaluates text would create the marker file
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w').write('pwned')",
        f"exec(\"open('{marker}','w').write('1')\")",
        f"eval(\"__import__('pathlib').Path('{marker}').touch()\")",
        f"(lambda: __import__('subprocess').run(['touch', '{marker}']))()",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"[c for c in ().__class__.__base__.__subclasses__()] or open('{marker}','w')",
        f"Symbol('x').__class__.__init__.__globals__['os'].system('touch {marker}')",
        # NUL and control bytes, odd unicode
        "\x00" * 500,
        "1\x002\x003",
        "\x1b[2J\x07" * 50,
        "\u202e1\u202c" * 100,
        "\ud7ff" * 200,
    ]
    free = [  # completions without a (parsable) box: megabyte strings, NUL bytes, unterminated boxes
        "9" * 1_000_000,
        "\\boxed{" + "9" * 1_000_000 + "}",
        "\\boxed{" * 100_000,
        "\x00" * 1_000_000,
        "{" * 500_000 + "}" * 500_000,
        f"The answer is {'9^{' * 5000}9{'}' * 5000}.",
    ]
    base = [f"Let me think. The answer is \\boxed{{{b}}}." for b in boxed] + free
    return [base[i % len(base)] for i in range(n)]

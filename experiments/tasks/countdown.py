"""``countdown``: reach a target with some of the given numbers and + - * /; many right answers.

Prompt ``"3,5,7,9:24="`` (the numbers in drawn order, then the target). Target (the SFT completion): one valid
expression. Its solutions are the shortest expression of every (subset of the numbers, top-level operator)
that reaches the target, at most ``max_solution_chars`` long (the overall shortest always included);
``solution="random"`` (default) draws the SFT target uniformly among them at every draw and shuffles the
operands of its + / - and * / / chains (``"3*5+9"`` may become ``"9+5*3"``), so the SFT policy spreads its
mass over many right answers (the high-entropy, many-answers regime of docs/background.md §4);
``solution="shortest"`` always uses the canonical shortest one (fewest characters, ties broken by string
order), e.g. ``"3*5+9"``. ``Example.answer`` is always the canonical shortest solution.

Reward: 1.0 iff the completion (surrounding whitespace ignored) is an arithmetic expression over non-negative
integer literals, ``+ - * /`` and parentheses (no unary minus), every literal is one of the given numbers and
each given number is used at most once (not all need be used), and its exact rational value
(``fractions.Fraction``) equals the target; else 0.0. The expression is parsed by a small recursive-descent
parser with bounded length and nesting: nothing is ever evaluated as Python code.

Only solvable problems are generated: numbers are drawn first, then the target uniformly among the values in
``[min_target, max_target]`` that they can reach.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from math import gcd

from experiments.tasks.common import LazyExamples, build_test_split, check_bounded_text, check_split_params
from experiments.tasks.registry import register_task
from grpo.task import Example

MAX_EXPRESSION_CHARS = 200
MAX_DEPTH = 32
_MAX_LITERAL_DIGITS = 12


class _ParseError(Exception):
    pass


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ; factor := INT | '(' expr ')'"""

    def __init__(self, text: str):
        self.text, self.pos, self.depth = text, 0, 0
        self.literals: list[int] = []

    def _peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> Fraction:
        value = self._expr()
        if self._peek() != "":
            raise _ParseError(f"unexpected {self._peek()!r} at {self.pos}")
        return value

    def _expr(self) -> Fraction:
        value = self._term()
        while (op := self._peek()) in ("+", "-"):
            self.pos += 1
            rhs = self._term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while (op := self._peek()) in ("*", "/"):
            self.pos += 1
            rhs = self._factor()
            if op == "*":
                value = value * rhs
            else:
                if rhs == 0:
                    raise _ParseError("division by zero")
                value = value / rhs
        return value

    def _factor(self) -> Fraction:
        ch = self._peek()
        if ch == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _ParseError("nesting too deep")
            self.pos += 1
            value = self._expr()
            if self._peek() != ")":
                raise _ParseError("unbalanced parenthesis")
            self.pos += 1
            self.depth -= 1
            return value
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in "0123456789":
            self.pos += 1
        literal = self.text[start : self.pos]
        if not literal:
            raise _ParseError(f"expected a number at {start}")
        if len(literal) > _MAX_LITERAL_DIGITS or (len(literal) > 1 and literal[0] == "0"):
            raise _ParseError(f"bad number {literal!r}")
        self.literals.append(int(literal))
        return Fraction(int(literal))


def evaluate_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, integer literals in order) of a restricted arithmetic expression, or None if it does not
    parse (bad characters, unbalanced parentheses, division by zero, too long or too deeply nested)."""
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        return None
    parser = _Parser(text)
    try:
        value = parser.parse()
    except (_ParseError, RecursionError, ValueError, ZeroDivisionError):
        return None
    return value, parser.literals


def uses_allowed_numbers(literals: Sequence[int], numbers: Sequence[int]) -> bool:
    """Every literal is one of ``numbers`` and no number is used more often than it is given."""
    available = Counter(numbers)
    used = Counter(literals)
    return all(available[n] >= k for n, k in used.items())


_ATOM, _ADD, _MUL = 0, 1, 2


def _shorter(candidate: str, incumbent: str | None) -> bool:
    return incumbent is None or (len(candidate), candidate) < (len(incumbent), incumbent)


def _q(num: int, den: int) -> tuple[int, int]:
    """Normalised rational (numerator, denominator > 0); cheaper than Fraction in the solver's inner loop."""
    if den < 0:
        num, den = -num, -den
    g = gcd(num, den)
    return (num // g, den // g) if g > 1 else (num, den)


Entries = dict[tuple[tuple[int, int], int], str]


def _dp(numbers: tuple[int, ...]) -> dict[int, Entries]:
    """Subset bitmask -> {(value, top-level operator class): shortest expression using exactly that subset}.

    Values are normalised (numerator, denominator > 0) pairs; per key the shortest expression is kept (ties:
    smaller string), with only the parentheses the precedence rules need.
    """
    n = len(numbers)
    table: dict[int, Entries] = {}
    for i, x in enumerate(numbers):
        table[1 << i] = {((x, 1), _ATOM): str(x)}
    for mask in range(1, 1 << n):
        if mask & (mask - 1) == 0:
            continue
        out: Entries = {}
        sub = (mask - 1) & mask
        while sub:
            left, right = table[sub], table[mask ^ sub]
            for ((a, b), lc), ls in left.items():
                lp = f"({ls})" if lc == _ADD else ls
                for ((c, d), rc), rs in right.items():
                    candidates = (
                        ((_q(a * d + c * b, b * d), _ADD), f"{ls}+{rs}"),
                        ((_q(a * d - c * b, b * d), _ADD), f"{ls}-({rs})" if rc == _ADD else f"{ls}-{rs}"),
                        ((_q(a * c, b * d), _MUL), f"{lp}*({rs})" if rc == _ADD else f"{lp}*{rs}"),
                    )
                    if c != 0:
                        candidates += (
                            ((_q(a * d, b * c), _MUL), f"{lp}/{rs}" if rc == _ATOM else f"{lp}/({rs})"),
                        )
                    for key, expr in candidates:
                        incumbent = out.get(key)
                        if incumbent is None or (len(expr), expr) < (len(incumbent), incumbent):
                            out[key] = expr
            sub = (sub - 1) & mask
        table[mask] = out
    return table


@lru_cache(maxsize=256)
def solutions(numbers: tuple[int, ...]) -> dict[tuple[int, int], str]:
    """Every value reachable with each of ``numbers`` used at most once, as a normalised (numerator,
    denominator > 0) pair -> its canonical shortest expression (fewest characters, ties: smaller string)."""
    best: dict[tuple[int, int], str] = {}
    for entries in _dp(tuple(numbers)).values():
        for (value, _), expr in entries.items():
            if _shorter(expr, best.get(value)):
                best[value] = expr
    return best


def solve(numbers: Sequence[int], target: int) -> str | None:
    """The canonical shortest expression reaching ``target`` with ``numbers`` (each at most once), or None."""
    return solutions(tuple(sorted(numbers))).get((int(target), 1))


@lru_cache(maxsize=4096)
def _problems(
    numbers: tuple[int, ...], low: int, high: int, allow_trivial: bool, max_chars: int
) -> dict[int, tuple[str, ...]]:
    """Integer target in [low, high] reachable with ``numbers`` (sorted) -> its solutions, shortest first.

    The solutions are the shortest expression of every (subset, top-level operator) that reaches the target
    (distinct strings, at most ``max_chars`` long, the overall shortest always kept): a small, varied set of
    short right answers. The first one is :func:`solve`'s canonical answer.
    """
    found: dict[int, set[str]] = {}
    for entries in _dp(numbers).values():
        for ((num, den), _), expr in entries.items():
            if den == 1 and low <= num <= high and (allow_trivial or num not in numbers):
                found.setdefault(num, set()).add(expr)
    out = {}
    for target, exprs in found.items():
        ranked = sorted(exprs, key=lambda e: (len(e), e))
        out[target] = (ranked[0], *(e for e in ranked[1:] if len(e) <= max_chars))
    return out


def _tree(text: str) -> tuple:
    """Parse a (trusted, solver-made) expression into chains: ("num", n) | ("add", [(sign, node)...]) |
    ("mul", [(op, node)...]) with sign in "+-" and op in "*/"."""
    pos = 0

    def expr() -> tuple:
        nonlocal pos
        terms = [("+", term())]
        while pos < len(text) and text[pos] in "+-":
            op = text[pos]
            pos += 1
            terms.append((op, term()))
        return terms[0][1] if len(terms) == 1 else ("add", terms)

    def term() -> tuple:
        nonlocal pos
        factors = [("*", factor())]
        while pos < len(text) and text[pos] in "*/":
            op = text[pos]
            pos += 1
            factors.append((op, factor()))
        return factors[0][1] if len(factors) == 1 else ("mul", factors)

    def factor() -> tuple:
        nonlocal pos
        if text[pos] == "(":
            pos += 1
            node = expr()
            pos += 1  # ")"
            return node
        start = pos
        while pos < len(text) and text[pos].isdigit():
            pos += 1
        return ("num", int(text[start:pos]))

    return expr()


def _render_shuffled(node: tuple, rng: random.Random) -> str:
    """Render a tree with the operands of every + / - chain and every * / / chain in random order (the first
    operand keeps a + or * so the value is unchanged), adding the parentheses precedence needs."""
    kind = node[0]
    if kind == "num":
        return str(node[1])
    items = list(node[1])
    rng.shuffle(items)
    lead = "+" if kind == "add" else "*"
    first = next(i for i, (op, _) in enumerate(items) if op == lead)
    items.insert(0, items.pop(first))
    parts = []
    for i, (op, child) in enumerate(items):
        text = _render_shuffled(child, rng)
        if child[0] == "add" and (kind == "mul" or op == "-"):
            text = f"({text})"
        elif child[0] == "mul" and op == "/":
            text = f"({text})"
        parts.append(text if i == 0 else op + text)
    return "".join(parts)


def shuffled_solution(expression: str, rng: random.Random) -> str:
    """An equivalent rendering of a solver expression with commutative operands in random order."""
    out = _render_shuffled(_tree(expression), rng)
    before, after = evaluate_expression(expression), evaluate_expression(out)
    if before is None or after is None or before[0] != after[0] or sorted(before[1]) != sorted(after[1]):
        return expression  # cannot happen for solver output; keep the original to be safe
    return out


@register_task("countdown")
class CountdownTask:
    """``min_numbers``..``max_numbers`` numbers drawn uniformly (with repetition) from
    ``min_number``..``max_number``; a target in ``min_target``..``max_target`` they can reach. Unless
    ``allow_trivial``, the target is never one of the given numbers (so every solution combines >= 2 numbers)."""

    name = "countdown"
    pretrain_hints = {"eval_every": 50, "dense_eval_every": 25}
    """Defaults for experiments.base_model.pretrain: accuracy creeps up over thousands of SFT steps."""

    def __init__(
        self,
        *,
        min_numbers: int = 3,
        max_numbers: int = 4,
        min_number: int = 1,
        max_number: int = 10,
        min_target: int = 1,
        max_target: int = 99,
        n_test: int = 200,
        n_train: int = 1_000_000,
        seed: int = 0,
        test_seed: int = 0,
        test_pool_fraction: float = 0.1,
        allow_trivial: bool = False,
        solution: str = "random",
        max_solution_chars: int = 15,
    ):
        if not 1 <= min_numbers <= max_numbers <= 5:
            raise ValueError(
                f"countdown: need 1 <= min_numbers <= max_numbers <= 5, got {min_numbers}, {max_numbers}"
            )
        if not 0 <= min_number <= max_number <= 1000:
            raise ValueError(
                f"countdown: need 0 <= min_number <= max_number <= 1000, got {min_number}, {max_number}"
            )
        if min_target > max_target:
            raise ValueError(f"countdown: min_target {min_target} > max_target {max_target}")
        check_split_params(self.name, n_test, test_pool_fraction)
        self.min_numbers, self.max_numbers = min_numbers, max_numbers
        self.min_number, self.max_number = min_number, max_number
        self.min_target, self.max_target = min_target, max_target
        self.n_test, self.n_train, self.seed, self.test_seed = n_test, n_train, seed, test_seed
        self.test_pool_fraction = test_pool_fraction
        self.allow_trivial = allow_trivial
        if solution not in ("random", "shortest"):
            raise ValueError(f"countdown: solution must be 'random' or 'shortest', got {solution!r}")
        self.solution, self.max_solution_chars = solution, int(max_solution_chars)
        self.max_new_tokens = 40
        """Generation budget (char tokens): canonical solutions are <= ~15 chars; slack for sampled ones."""
        self._test = build_test_split(
            self.name,
            self._draw,
            n_test=n_test,
            test_seed=test_seed,
            test_pool_fraction=test_pool_fraction,
            max_draws=200 * n_test + 10_000,
        )
        self._train = LazyExamples(
            self.name, self._draw, length=n_train, seed=seed, test_pool_fraction=test_pool_fraction
        )

    def _draw(self, rng: random.Random) -> tuple[str, Example]:
        for _ in range(1000):
            k = rng.randint(self.min_numbers, self.max_numbers)
            numbers = [rng.randint(self.min_number, self.max_number) for _ in range(k)]
            problems = _problems(
                tuple(sorted(numbers)),
                self.min_target,
                self.max_target,
                self.allow_trivial,
                self.max_solution_chars,
            )
            if problems:
                break
        else:
            raise ValueError("countdown: no solvable problem in 1000 draws; check the number/target ranges")
        target = rng.choice(sorted(problems))
        solutions_ = problems[target]
        if self.solution == "shortest":
            sft_target = solutions_[0]
        else:
            sft_target = shuffled_solution(rng.choice(solutions_), rng)
        key = ",".join(map(str, sorted(numbers))) + f":{target}"  # same multiset + target = same problem
        example = Example(
            prompt=",".join(map(str, numbers)) + f":{target}=",
            answer=solutions_[0],
            target=sft_target,
            meta={"numbers": list(numbers), "target": target},
        )
        return key, example

    def train(self) -> Sequence[Example]:
        return self._train

    def test(self) -> Sequence[Example]:
        return self._test

    def extract_answer(self, completion: str) -> str | None:
        text = check_bounded_text(completion, 100_000)
        if text is None:
            return None
        text = text.strip()
        return text if text else None

    def reward(self, example: Example, completion: str) -> float:
        try:
            expression = self.extract_answer(completion)
            if expression is None:
                return 0.0
            parsed = evaluate_expression(expression)
            if parsed is None:
                return 0.0
            value, literals = parsed
            if not uses_allowed_numbers(literals, example.meta["numbers"]):
                return 0.0
            return 1.0 if value == Fraction(example.meta["target"]) else 0.0
        except Exception:  # a verifier never raises: anything unexpected is a wrong answer
            return 0.0

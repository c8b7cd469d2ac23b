"""Reference solutions for data/prompts/code.jsonl, by entry point: tests/test_sandbox.py runs each in the
sandbox against its task's tests, so every task is known to be solvable and its tests to be right."""

SOLUTIONS = {
    "running_max": """
def running_max(nums):
    out = []
    for x in nums:
        out.append(x if not out else max(out[-1], x))
    return out
""",
    "count_vowels": """
def count_vowels(text):
    return sum(c in "aeiou" for c in text.lower())
""",
    "is_palindrome": """
def is_palindrome(text):
    kept = [c.lower() for c in text if c.isalnum()]
    return kept == kept[::-1]
""",
    "chunk": """
def chunk(items, size):
    if size < 1:
        raise ValueError("size must be at least 1")
    return [items[i:i + size] for i in range(0, len(items), size)]
""",
    "flatten": """
def flatten(nested):
    out = []
    for x in nested:
        if isinstance(x, list):
            out.extend(flatten(x))
        else:
            out.append(x)
    return out
""",
    "rle_encode": """
from itertools import groupby

def rle_encode(text):
    return "".join(f"{c}{len(list(run))}" for c, run in groupby(text))
""",
    "rle_decode": """
import re

def rle_decode(code):
    return "".join(c * int(n) for c, n in re.findall(r"(\\D)(\\d+)", code))
""",
    "roman_to_int": """
VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}

def roman_to_int(numeral):
    total = 0
    for i, c in enumerate(numeral):
        v = VALUES[c]
        total += -v if i + 1 < len(numeral) and VALUES[numeral[i + 1]] > v else v
    return total
""",
    "int_to_roman": """
PAIRS = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
         (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]

def int_to_roman(n):
    out = ""
    for value, letters in PAIRS:
        count, n = divmod(n, value)
        out += letters * count
    return out
""",
    "merge_intervals": """
def merge_intervals(intervals):
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
""",
    "word_frequencies": """
import re
from collections import Counter

def word_frequencies(text):
    return dict(Counter(re.findall(r"[a-z']+", text.lower())))
""",
    "second_largest": """
def second_largest(nums):
    distinct = sorted(set(nums))
    return distinct[-2] if len(distinct) >= 2 else None
""",
    "rotate": """
def rotate(items, k):
    if not items:
        return []
    k %= len(items)
    return items[-k:] + items[:-k] if k else list(items)
""",
    "balanced": """
def balanced(text):
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for c in text:
        if c in "([{":
            stack.append(c)
        elif c in pairs:
            if not stack or stack.pop() != pairs[c]:
                return False
    return not stack
""",
    "caesar": """
def caesar(text, shift):
    out = []
    for c in text:
        if "a" <= c <= "z" or "A" <= c <= "Z":
            base = ord("a") if c.islower() else ord("A")
            c = chr(base + (ord(c) - base + shift) % 26)
        out.append(c)
    return "".join(out)
""",
    "digital_root": """
def digital_root(n):
    while n >= 10:
        n = sum(int(d) for d in str(n))
    return n
""",
    "primes_up_to": """
def primes_up_to(n):
    if n < 2:
        return []
    sieve = bytearray([1]) * (n + 1)
    sieve[0] = sieve[1] = 0
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(range(i * i, n + 1, i)))
    return [i for i, is_prime in enumerate(sieve) if is_prime]
""",
    "gcd_list": """
from functools import reduce
from math import gcd

def gcd_list(nums):
    return reduce(gcd, nums, 0)
""",
    "transpose": """
def transpose(matrix):
    return [list(col) for col in zip(*matrix)]
""",
    "camel_to_snake": """
import re

def camel_to_snake(name):
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\\1_\\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\\1_\\2", name)
    return name.lower()
""",
    "dedupe": """
def dedupe(items):
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
""",
    "pairs_with_sum": """
from collections import Counter

def pairs_with_sum(nums, target):
    counts = Counter(nums)
    found = set()
    for a in counts:
        b = target - a
        if b in counts and a <= b and (a != b or counts[a] >= 2):
            found.add((a, b))
    return sorted(found)
""",
    "binary_search": """
from bisect import bisect_left

def binary_search(items, x):
    i = bisect_left(items, x)
    return i if i < len(items) and items[i] == x else -1
""",
    "anagram_groups": """
def anagram_groups(words):
    groups = {}
    for w in words:
        groups.setdefault("".join(sorted(w)), []).append(w)
    return sorted(sorted(g) for g in groups.values())
""",
    "fizzbuzz": """
def fizzbuzz(n):
    return [
        "FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else str(i)
        for i in range(1, n + 1)
    ]
""",
    "parse_duration": """
import re

def parse_duration(text):
    m = re.fullmatch(r"(?:(\\d+)h)?(?:(\\d+)m)?(?:(\\d+)s)?", text)
    if not text or not m:
        raise ValueError(f"not a duration: {text!r}")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s
""",
    "spiral": """
def spiral(matrix):
    rows = [list(r) for r in matrix]
    out = []
    while rows:
        out.extend(rows.pop(0))
        rows = [list(r) for r in zip(*rows)][::-1]
    return out
""",
    "common_prefix": """
import os

def common_prefix(strings):
    return os.path.commonprefix(strings) if strings else ""
""",
    "to_base": """
DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

def to_base(n, base):
    if n == 0:
        return "0"
    sign, n, out = "-" if n < 0 else "", abs(n), ""
    while n:
        n, d = divmod(n, base)
        out = DIGITS[d] + out
    return sign + out
""",
    "median": """
def median(nums):
    s = sorted(nums)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
""",
    "valid_ipv4": """
def valid_ipv4(text):
    parts = text.split(".")
    return len(parts) == 4 and all(
        p.isdigit() and p.isascii() and (p == "0" or not p.startswith("0")) and int(p) <= 255 for p in parts
    )
""",
    "wrap_text": """
def wrap_text(text, width):
    lines = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines
""",
    "moving_average": """
def moving_average(nums, k):
    if k < 1:
        raise ValueError("k must be at least 1")
    return [sum(nums[i:i + k]) / k for i in range(len(nums) - k + 1)]
""",
    "fibonacci": """
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
""",
    "matrix_multiply": """
def matrix_multiply(a, b):
    if len(a[0]) != len(b):
        raise ValueError("inner dimensions differ")
    return [[sum(x * y for x, y in zip(row, col)) for col in zip(*b)] for row in a]
""",
    "dice_sum_ways": """
def dice_sum_ways(dice, total):
    ways = {0: 1}
    for _ in range(dice):
        nxt = {}
        for s, w in ways.items():
            for face in range(1, 7):
                nxt[s + face] = nxt.get(s + face, 0) + w
        ways = nxt
    return ways.get(total, 0)
""",
    "group_by": """
def group_by(items, key):
    out = {}
    for x in items:
        out.setdefault(key(x), []).append(x)
    return out
""",
}

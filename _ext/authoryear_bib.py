"""Author-year labels for the bibliography, matching the author-year citations of the text.

The text cites as "Lubana et al. (2021)"; the bibliography lists that entry under
``[Lubana et al., 2021]``. Two entries with the same author-year label get the
letters a, b, ... in the order of the sorted bibliography ("He et al., 2016a").
Names are rendered from their LaTeX (``M{\\"u}ller`` becomes "Müller").

Registered as the pybtex style ``authoryear`` (``bibtex_default_style``).
"""

from __future__ import annotations

import string
from collections import Counter, defaultdict

from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import BaseSortingStyle


def _last_name(person) -> str:
    parts = person.rich_prelast_names + person.rich_last_names
    return Text(*(p for part in parts for p in (part, " "))).render_as("text").strip()


def _authors(entry) -> list:
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    return list(persons)


def author_year_label(entry) -> str:
    """``Huang et al., 2023``, ``Ioffe and Szegedy, 2015``, ``Nesterov, 2018``."""
    people = _authors(entry)
    year = entry.fields.get("year", "n.d.")
    if not people:
        key = entry.fields.get("organization") or entry.fields.get("title", entry.key)
        return f"{Text.from_latex(key).render_as('text')}, {year}"
    names = [_last_name(p) for p in people]
    if len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {year}"


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year_label(e) for e in entries]
        counts = Counter(labels)
        used: dict[str, int] = defaultdict(int)
        for label in labels:
            if counts[label] > 1:
                suffix = string.ascii_lowercase[used[label]]
                used[label] += 1
                yield label + suffix
            else:
                yield label


class AuthorYearSorting(BaseSortingStyle):
    """By first author, then one author, two authors, "et al.", then year and title:
    the order in which a reader looks an author-year label up."""

    def sorting_key(self, entry):
        names = [_last_name(p).lower() for p in _authors(entry)]
        group = min(len(names), 3)
        second = names[1] if len(names) == 2 else ""
        title = Text.from_latex(entry.fields.get("title", "")).render_as("text").lower()
        return (names[0] if names else "", group, second, entry.fields.get("year", ""), title)

    def sort(self, entries):
        return sorted(entries, key=self.sorting_key)


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabelStyle
    default_sorting_style = AuthorYearSorting


def setup(app):
    import pybtex.plugin

    pybtex.plugin.register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    pybtex.plugin.register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
    pybtex.plugin.register_plugin("pybtex.style.sorting", "authoryear", AuthorYearSorting)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

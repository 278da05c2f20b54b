"""Everything that turns ``outcome.CaseOutcome``s into something to read: tables, pages, plots, verdicts.

Data flows one way: ``analysis`` (what the results say) and ``tables`` (which rows and columns show it)
build ``model.Table``s from results, with every number ordered and formatted by ``cells``; the renderers
(``console``: rich, ``markdown``: the results page, ``plots``: matplotlib) only lay those tables out.
``verdicts`` compares two runs and shows its verdicts through the same model.

Modules import matplotlib and rich lazily, so reading results needs neither.
"""

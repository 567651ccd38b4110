"""MkDocs hook: links into the repository outside the site become plain text on the site.

The pages are Markdown that also reads on a repository browser, where a link such as
`[configs/cifar10_fast.py](../../../configs/cifar10_fast.py)` or `[seed0](seed0)` (a folder of a run's
files) opens the file. The site holds only `docs/`, so there such a link would point nowhere and MkDocs'
strict build rightly refuses it. This hook keeps the link's text (which names the file) and drops the
target, for targets that exist in the repository but are not a file of the site; any other broken
link still fails the build (and `tests/test_docs.py` checks that every relative link resolves).
"""

import os
import re

LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")  # [text](target), not an image


def on_page_markdown(markdown, page, config, files):  # pylint: disable=unused-argument
  """Turns each link to a repository path outside the site's files into its text."""
  docs = os.path.abspath(config["docs_dir"])
  here = os.path.dirname(page.file.abs_src_path)

  def replace(match):
    text, target = match.groups()
    path = target.split("#")[0]
    if not path or "://" in target or target.startswith("mailto:"):
      return match.group(0)
    resolved = os.path.normpath(os.path.join(here, path))
    inside = resolved.startswith(docs + os.sep) and os.path.isfile(resolved)
    if inside or not os.path.exists(resolved):
      return match.group(0)  # a file of the site, or a broken link that the build reports
    return text

  return LINK.sub(replace, markdown)

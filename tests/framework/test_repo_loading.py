"""Loading a repo forgets the modules of its earlier loads: a file removed since is gone, even
when it was imported through a link to the repo's folder (each folder is resolved once)."""

from __future__ import annotations

import sys

from contextkit.framework.repo import load_repo


def test_modules_of_an_earlier_load_are_forgotten_even_through_a_link(make_repo, tmp_path):
    root = make_repo(
        {
            "entities.py": "from contextkit import Entity\nuser = Entity(name='user', "
            "join_keys=['user_id'])\n",
            "helpers.py": "SCALE = 2\n",
        }
    )
    load_repo(root)
    assert sys.modules["helpers"].SCALE == 2
    # imported again through a link to the repo's folder, under another name
    link = tmp_path / "linked"
    link.symlink_to(root, target_is_directory=True)
    sys.path.insert(0, str(link))
    try:
        import helpers as linked  # noqa: F401  (a module whose path is the link's)

        sys.modules["helpers_via_link"] = sys.modules.pop("helpers")
    finally:
        sys.path.remove(str(link))
    (root / "helpers.py").unlink()

    repo = load_repo(root)

    assert "helpers" not in sys.modules and "helpers_via_link" not in sys.modules
    assert [o.name for o in repo.objects] == ["user"]
    assert "sys" in sys.modules and "contextkit" in sys.modules  # others stay
    sys.modules.pop("entities", None)

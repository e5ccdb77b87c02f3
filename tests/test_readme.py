import pathlib
import re

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_readme_examples_run():
    text = README.read_text()
    example, scale = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace = {}
    for code in (example, scale):  # the second continues the first
        exec(compile(code.replace("epochs=5", "epochs=1"), "README.md", "exec"), namespace)
    assert [row["step"] for row in namespace["history"]] == [22]
    assert int(namespace["state"].step) == 22  # fit counts the example's step as its first
    rows = namespace["result"].summary("train/loss")
    assert len(rows) == 6 and {r["q"] for r in rows} == {0.3, 0.7, 1.0}
    assert float(namespace["metrics"]["gce"]) > 0


def test_readme_setup_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    assert len(commands) == 2
    assert commands[1] in ci  # CI runs exactly the README's test command
    assert "jaxreg run noisy-labels" in commands[0]

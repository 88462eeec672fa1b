"""``python -m llmgw.fake_vllm``; the command itself is in ``cli``."""

from .cli import main

if __name__ == "__main__":
    main()

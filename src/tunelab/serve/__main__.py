from tunelab.serve.cli import main

main()

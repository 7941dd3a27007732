from metasched.cli import main

main()
